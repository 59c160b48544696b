"""An incremental index of an inventory snapshot, grouped by node state.

Placement must look at every node that could take a request. Nodes that are alike (same
GPU model, GPU count, labels, pool and status) and in the same state (same free CPU, free
memory and multiset of free GPU shares) score the same under every policy here, so the
index keeps them together: one group per distinct state, holding the node ordinals in
ascending order. A policy then scores each group instead of each node, and moving one node
between groups after a binding costs O(group size) at worst. On the openb cluster of 1,213
nodes there are a few dozen groups when it is empty and about a thousand when it is full.
Groups have stable ids and the index logs which ones changed, so a policy can keep its
rankings between placements and only rescore what changed (``policies.Ranking``).

The index owns copies of the numbers it is built from; it never changes the
:class:`~neocloud.server.scheduler.types.NodeSnapshot` objects it was given.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from neocloud.server.scheduler.types import MILLI, Binding, GpuSlot, NodeSnapshot, ResourceRequest

DynKey = tuple[int, int, tuple[int, ...]]
"""A node's state: (free CPU millicores, free memory MiB, free milli-GPU per GPU, descending)."""


@dataclass(frozen=True)
class NodeClass:
    """What alike nodes share and never changes with placements.

    Attributes:
        gpu_type: GPU model ("" for CPU-only nodes).
        gpu_count: number of GPUs.
        gpu_memory_mib: memory of each GPU (MiB; 0 when unknown).
        labels: node labels as sorted pairs.
        pool: node pool; a node selector may name it with the key ``pool``.
        status: node status; only ``"ready"`` takes new work.
    """

    gpu_type: str
    gpu_count: int
    gpu_memory_mib: int
    labels: tuple[tuple[str, str], ...]
    pool: str | None
    status: str

    def label_dict(self) -> dict[str, str]:
        """Labels as a dict, with ``pool`` added when the node has a pool and no such label."""
        labels = dict(self.labels)
        if self.pool is not None:
            labels.setdefault("pool", self.pool)
        return labels

    def admits(self, request: ResourceRequest) -> bool:
        """Static fit: ready, allowed GPU model, enough GPUs in total, labels match."""
        if self.status != "ready":
            return False
        if request.wants_gpu:
            if self.gpu_count < request.gpu_slots:
                return False
            if not request.allows_gpu_type(self.gpu_type):
                return False
        if request.selector:
            labels = self.label_dict()
            for key, value in request.selector:
                if labels.get(key) != value:
                    return False
        return True


def dyn_fits(dyn: DynKey, request: ResourceRequest) -> bool:
    """Whether a node in state ``dyn`` has room for ``request`` (CPU, memory, GPU shares)."""
    cpu, mem, gpus = dyn
    if cpu < request.cpu_milli or mem < request.memory_mib:
        return False
    count = request.gpu_count
    if count:
        return len(gpus) >= count and gpus[count - 1] == MILLI
    if request.gpu_milli:
        return bool(gpus) and gpus[0] >= request.gpu_milli
    return True


def give_back(free: list[int], devices: Sequence[int], binding: Binding) -> None:
    """Return ``binding``'s GPU shares into ``free`` (free milli-GPU per GPU, in the order
    of ``devices``, the device indices), in place.

    The release rule of :class:`~neocloud.server.scheduler.types.NodeSnapshot`: a GPU
    index the node no longer lists (it joined again with fewer GPUs) has nothing to free,
    and its share is simply gone with it. Every release of the scheduler (the index's,
    the snapshots', the preemption search's) follows it.

    Raises:
        ValueError: a listed GPU would have more than a whole GPU (1000 milli-GPU) free.
    """
    for d in binding.gpu_indices:
        try:
            slot = devices.index(d)
        except ValueError:
            continue  # not listed any more: nothing to free
        if free[slot] + binding.gpu_milli > MILLI:
            raise ValueError(
                f"releasing this binding would exceed GPU {d} of node {binding.node_id}")
        free[slot] += binding.gpu_milli


_EMPTY: list[int] = []
"""Shared member list of a group that has no node now (never appended to)."""


class ClusterIndex:
    """Mutable, grouped view of an inventory for fast repeated placement.

    Every (class, state) pair ever seen gets a stable *group id* (``gid``):
    :attr:`group_class` and :attr:`group_dyn` give its class and state,
    :attr:`group_members` its node ordinals now (ascending; empty when no node is in that
    state), and :attr:`changes` is an append-only log of the ids whose membership changed,
    in order. Policies use the log to keep per-request rankings up to date without
    rescanning every group (see ``policies.py``).

    Args:
        nodes: the inventory; each node's current free amounts are copied in.

    Raises:
        ValueError: on duplicate node ids or a node that mixes GPU models.
    """

    def __init__(self, nodes: Iterable[NodeSnapshot]) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.classes: list[NodeClass] = []
        self._class_ids: dict[NodeClass, int] = {}
        self.node_class: list[int] = []
        self.cpu_total: list[int] = []
        self.mem_total: list[int] = []
        self.cpu_free: list[int] = []
        self.mem_free: list[int] = []
        self.gpu_free: list[list[int]] = []
        self._gpu_index_of: list[list[int]] = []
        self.dyn: list[DynKey] = []
        self.groups: list[dict[DynKey, list[int]]] = []
        self.group_ids: dict[tuple[int, DynKey], int] = {}
        self.group_class: list[int] = []
        self.group_dyn: list[DynKey] = []
        self.group_members: list[list[int]] = []
        self.changes: list[int] = []
        self.live_groups = 0
        self.version = 0
        self._admit_cache: dict[tuple[object, ...], tuple[int, list[int]]] = {}
        for node in nodes:
            self.add_node(node)

    # ----- building -----------------------------------------------------------------
    def _class_id(self, cls: NodeClass) -> int:
        cid = self._class_ids.get(cls)
        if cid is None:
            cid = len(self.classes)
            self.classes.append(cls)
            self._class_ids[cls] = cid
            self.groups.append({})
        return cid

    def add_node(self, node: NodeSnapshot) -> int:
        """Add one node; returns its ordinal (position in :attr:`ids`)."""
        if node.id in self.pos:
            raise ValueError(f"duplicate node id {node.id!r}")
        types = {g.type for g in node.gpus}
        if len(types) > 1:
            raise ValueError(f"node {node.id!r} mixes GPU models {sorted(types)}")
        cls = NodeClass(
            gpu_type=node.gpu_type,
            gpu_count=len(node.gpus),
            gpu_memory_mib=node.gpus[0].memory_mib if node.gpus else 0,
            labels=tuple(sorted(node.labels.items())),
            pool=node.pool,
            status=node.status,
        )
        ordinal = len(self.ids)
        self.ids.append(node.id)
        self.pos[node.id] = ordinal
        self.node_class.append(self._class_id(cls))
        self.cpu_total.append(node.cpu_milli_total)
        self.mem_total.append(node.memory_mib_total)
        self.cpu_free.append(node.cpu_milli_free)
        self.mem_free.append(node.memory_mib_free)
        gpus = sorted(node.gpus, key=lambda g: g.index)
        if any(not 0 <= g.free_milli <= MILLI for g in gpus):
            raise ValueError(f"node {node.id!r} has a GPU with free_milli outside 0..1000")
        self.gpu_free.append([g.free_milli for g in gpus])
        self._gpu_index_of.append([g.index for g in gpus])
        self.dyn.append(self._make_dyn(ordinal))
        self._group_add(ordinal)
        return ordinal

    def _make_dyn(self, ordinal: int) -> DynKey:
        return (
            self.cpu_free[ordinal],
            self.mem_free[ordinal],
            tuple(sorted(self.gpu_free[ordinal], reverse=True)),
        )

    def _gid(self, cid: int, key: DynKey) -> int:
        gid = self.group_ids.get((cid, key))
        if gid is None:
            gid = len(self.group_class)
            self.group_ids[(cid, key)] = gid
            self.group_class.append(cid)
            self.group_dyn.append(key)
            self.group_members.append(_EMPTY)
        return gid

    def _group_add(self, ordinal: int) -> None:
        cid = self.node_class[ordinal]
        groups = self.groups[cid]
        key = self.dyn[ordinal]
        members = groups.get(key)
        if members is None:
            members = groups[key] = [ordinal]
            gid = self._gid(cid, key)
            self.group_members[gid] = members
            self.live_groups += 1
        else:
            insort(members, ordinal)
            gid = self.group_ids[(cid, key)]
        self.changes.append(gid)

    def _group_remove(self, ordinal: int) -> None:
        cid = self.node_class[ordinal]
        groups = self.groups[cid]
        key = self.dyn[ordinal]
        members = groups[key]
        gid = self.group_ids[(cid, key)]
        if len(members) == 1:
            del groups[key]
            self.group_members[gid] = _EMPTY
            self.live_groups -= 1
        else:
            del members[bisect_left(members, ordinal)]
        self.changes.append(gid)

    def _refresh(self, ordinal: int) -> None:
        self._group_remove(ordinal)
        self.dyn[ordinal] = self._make_dyn(ordinal)
        self._group_add(ordinal)
        self.version += 1

    # ----- queries --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def device_indices(self, ordinal: int) -> list[int]:
        """Device indices of the node's GPUs, in the order of :attr:`gpu_free`."""
        return self._gpu_index_of[ordinal]

    def admitting_classes(self, request: ResourceRequest) -> list[int]:
        """Ids of node classes that can take ``request`` when they have room (cached)."""
        sig = (request.gpu_slots, request.gpu_types, request.gpu_types_excluded,
               request.selector)
        hit = self._admit_cache.get(sig)
        if hit is not None and hit[0] == len(self.classes):
            return hit[1]
        cids = [cid for cid, cls in enumerate(self.classes) if cls.admits(request)]
        self._admit_cache[sig] = (len(self.classes), cids)
        return cids

    def feasible_groups(self, request: ResourceRequest) -> Iterator[tuple[int, DynKey, list[int]]]:
        """Every group of nodes with room for ``request``: ``(class id, state, ordinals)``."""
        cpu = request.cpu_milli
        mem = request.memory_mib
        count = request.gpu_count
        share = request.gpu_milli
        for cid in self.admitting_classes(request):
            for dyn, members in self.groups[cid].items():
                if dyn[0] < cpu or dyn[1] < mem:
                    continue
                gpus = dyn[2]
                if count:
                    if len(gpus) < count or gpus[count - 1] != MILLI:
                        continue
                elif share and gpus[0] < share:
                    continue
                yield cid, dyn, members

    def group_count(self) -> int:
        """Number of distinct (class, state) groups."""
        return sum(len(g) for g in self.groups)

    # ----- changes --------------------------------------------------------------------
    def bind(self, ordinal: int, request: ResourceRequest, slots: tuple[int, ...]) -> Binding:
        """Take ``request`` on node ``ordinal`` using GPU positions ``slots``; returns the binding.

        ``slots`` are positions in :attr:`gpu_free` (not device indices).

        Raises:
            ValueError: when the node lacks the room (the index is left unchanged).
        """
        free = self.gpu_free[ordinal]
        per = request.per_gpu_milli
        if (
            self.cpu_free[ordinal] < request.cpu_milli
            or self.mem_free[ordinal] < request.memory_mib
            or len(slots) != request.gpu_slots
            or len(set(slots)) != len(slots)
            or any(free[s] < per for s in slots)
        ):
            raise ValueError(f"node {self.ids[ordinal]} has no room for {request.describe()}")
        for s in slots:
            free[s] -= per
        self.cpu_free[ordinal] -= request.cpu_milli
        self.mem_free[ordinal] -= request.memory_mib
        self._refresh(ordinal)
        devices = self._gpu_index_of[ordinal]
        return Binding(
            node_id=self.ids[ordinal],
            gpu_indices=tuple(devices[s] for s in slots),
            gpu_milli=per if slots else 0,
            cpu_milli=request.cpu_milli,
            memory_mib=request.memory_mib,
        )

    def _slots_of(self, ordinal: int, binding: Binding) -> list[int]:
        devices = self._gpu_index_of[ordinal]
        try:
            return [devices.index(i) for i in binding.gpu_indices]
        except ValueError:
            raise ValueError(
                f"node {binding.node_id} has no GPU index among {list(binding.gpu_indices)}"
            ) from None

    def apply(self, binding: Binding) -> None:
        """Take a binding's resources (e.g. replaying existing allocations).

        Raises:
            ValueError: unknown node, unknown GPU index, or not enough free room.
        """
        ordinal = self._ordinal(binding.node_id)
        slots = self._slots_of(ordinal, binding)
        free = self.gpu_free[ordinal]
        if (
            self.cpu_free[ordinal] < binding.cpu_milli
            or self.mem_free[ordinal] < binding.memory_mib
            or any(free[s] < binding.gpu_milli for s in slots)
        ):
            raise ValueError(f"node {binding.node_id} has no room for this binding")
        for s in slots:
            free[s] -= binding.gpu_milli
        self.cpu_free[ordinal] -= binding.cpu_milli
        self.mem_free[ordinal] -= binding.memory_mib
        self._refresh(ordinal)

    def release(self, binding: Binding) -> None:
        """Give a binding's resources back (GPU indices the node no longer lists have
        nothing to free: :func:`give_back`).

        Raises:
            ValueError: unknown node, or a release beyond the node's capacity (the index is
                left unchanged).
        """
        ordinal = self._ordinal(binding.node_id)
        if (
            self.cpu_free[ordinal] + binding.cpu_milli > self.cpu_total[ordinal]
            or self.mem_free[ordinal] + binding.memory_mib > self.mem_total[ordinal]
        ):
            raise ValueError(
                f"releasing this binding would exceed node {binding.node_id}'s capacity"
            )
        free = list(self.gpu_free[ordinal])
        give_back(free, self._gpu_index_of[ordinal], binding)
        self.gpu_free[ordinal] = free
        self.cpu_free[ordinal] += binding.cpu_milli
        self.mem_free[ordinal] += binding.memory_mib
        self._refresh(ordinal)

    def set_status(self, node_id: str, status: str) -> None:
        """Change a node's status (e.g. cordon it); only ``"ready"`` nodes take new work."""
        ordinal = self._ordinal(node_id)
        self._group_remove(ordinal)
        old = self.classes[self.node_class[ordinal]]
        cls = NodeClass(
            old.gpu_type, old.gpu_count, old.gpu_memory_mib, old.labels, old.pool, status
        )
        self.node_class[ordinal] = self._class_id(cls)
        self._group_add(ordinal)
        self.version += 1

    def reset_node(self, node: NodeSnapshot) -> int:
        """Make node ``node.id`` exactly ``node`` (totals, free amounts, GPUs, labels,
        pool, status), adding it when it is new; returns its ordinal. Used to bring one
        node of a long-lived index back in line with the database.

        Raises:
            ValueError: the node mixes GPU models or has a GPU with free_milli outside
                0..1000.
        """
        if node.id not in self.pos:
            return self.add_node(node)
        types = {g.type for g in node.gpus}
        if len(types) > 1:
            raise ValueError(f"node {node.id!r} mixes GPU models {sorted(types)}")
        gpus = sorted(node.gpus, key=lambda g: g.index)
        if any(not 0 <= g.free_milli <= MILLI for g in gpus):
            raise ValueError(f"node {node.id!r} has a GPU with free_milli outside 0..1000")
        ordinal = self.pos[node.id]
        self._group_remove(ordinal)
        self.node_class[ordinal] = self._class_id(NodeClass(
            gpu_type=node.gpu_type, gpu_count=len(node.gpus),
            gpu_memory_mib=node.gpus[0].memory_mib if node.gpus else 0,
            labels=tuple(sorted(node.labels.items())), pool=node.pool, status=node.status))
        self.cpu_total[ordinal] = node.cpu_milli_total
        self.mem_total[ordinal] = node.memory_mib_total
        self.cpu_free[ordinal] = node.cpu_milli_free
        self.mem_free[ordinal] = node.memory_mib_free
        self.gpu_free[ordinal] = [g.free_milli for g in gpus]
        self._gpu_index_of[ordinal] = [g.index for g in gpus]
        self.dyn[ordinal] = self._make_dyn(ordinal)
        self._group_add(ordinal)
        self.version += 1
        return ordinal

    def can_take(self, binding: Binding, request: ResourceRequest) -> bool:
        """Whether ``binding`` (of ``request``) fits its node as the index sees it now:
        the node admits the request (status, GPU model, labels) and has the binding's CPU,
        memory and share on each of its GPUs free."""
        ordinal = self.pos.get(binding.node_id)
        if ordinal is None or not self.classes[self.node_class[ordinal]].admits(request):
            return False
        if self.cpu_free[ordinal] < binding.cpu_milli \
                or self.mem_free[ordinal] < binding.memory_mib:
            return False
        devices = self._gpu_index_of[ordinal]
        free = self.gpu_free[ordinal]
        for i in binding.gpu_indices:
            if i not in devices or free[devices.index(i)] < binding.gpu_milli:
                return False
        return True

    def _ordinal(self, node_id: str) -> int:
        try:
            return self.pos[node_id]
        except KeyError:
            raise ValueError(f"unknown node {node_id!r}") from None

    def snapshot(self) -> list[NodeSnapshot]:
        """The index's current state as fresh :class:`NodeSnapshot` objects."""
        out = []
        for o, node_id in enumerate(self.ids):
            cls = self.classes[self.node_class[o]]
            out.append(
                NodeSnapshot(
                    id=node_id,
                    cpu_milli_total=self.cpu_total[o],
                    cpu_milli_free=self.cpu_free[o],
                    memory_mib_total=self.mem_total[o],
                    memory_mib_free=self.mem_free[o],
                    gpus=[
                        GpuSlot(
                            index=d, type=cls.gpu_type, memory_mib=cls.gpu_memory_mib, free_milli=f
                        )
                        for d, f in zip(self._gpu_index_of[o], self.gpu_free[o], strict=True)
                    ],
                    labels=dict(cls.labels),
                    pool=cls.pool,
                    status=cls.status,
                )
            )
        return out
