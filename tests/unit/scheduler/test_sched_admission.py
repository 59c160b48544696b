"""Quota checks and their reasons."""

from __future__ import annotations

from neocloud.server.scheduler import (
    Binding,
    Quota,
    ResourceRequest,
    Usage,
    check_quota,
    narrow_to_quota,
)


def h100(n: int = 1) -> ResourceRequest:
    return ResourceRequest(1000, 1024, gpu_count=n, gpu_types=("h100",))


def test_per_type_limit_reason() -> None:
    quota = Quota(gpus_by_type={"h100": 8})
    assert check_quota(quota, Usage({"h100": 7000}), h100()) is None
    reason = check_quota(quota, Usage({"h100": 8000}), h100())
    assert reason == "quota: 8/8 h100 GPUs in use (1 more requested)"
    assert check_quota(quota, Usage({"h100": 4000}), h100(), count=5) is not None
    assert check_quota(quota, Usage({"h100": 4000}), h100(), count=4) is None


def test_fractions_count_as_fractions() -> None:
    quota = Quota(gpus_total=1)
    half = ResourceRequest(1000, 1024, gpu_milli=500)
    assert check_quota(quota, Usage({"a10": 500}), half) is None
    assert (
        check_quota(quota, Usage({"a10": 750}), half)
        == "quota: 0.75/1 GPUs in use (0.5 more requested)"
    )


def test_star_limits_each_unlisted_type() -> None:
    quota = Quota(gpus_by_type={"h100": 8, "*": 2})
    a10 = ResourceRequest(1000, 1024, gpu_count=1, gpu_types=("a10",))
    assert check_quota(quota, Usage({"a10": 1000}), a10) is None
    assert (
        check_quota(quota, Usage({"a10": 2000}), a10)
        == "quota: 2/2 a10 GPUs in use (1 more requested)"
    )
    anything = ResourceRequest(1, 1, gpu_count=1)
    narrowed = narrow_to_quota(quota, Usage({"h100": 8000}), anything)
    assert narrowed is not None
    assert narrowed.gpu_types == () and narrowed.gpu_types_excluded == ("h100",)


def test_request_with_several_types_fits_if_one_has_room() -> None:
    quota = Quota(gpus_by_type={"h100": 8, "a100": 4})
    either = ResourceRequest(1000, 1024, gpu_count=2, gpu_types=("h100", "a100"))
    usage = Usage({"h100": 8000, "a100": 1000})
    assert check_quota(quota, usage, either) is None
    narrowed = narrow_to_quota(quota, usage, either)
    assert narrowed is not None and narrowed.gpu_types == ("a100",)
    full = Usage({"h100": 8000, "a100": 4000})
    assert check_quota(quota, full, either) == (
        "quota: 8/8 h100 GPUs in use, 4/4 a100 GPUs in use (2 more requested)"
    )


def test_cpu_memory_and_total_limits() -> None:
    quota = Quota(gpus_total=4, cpu_milli=16_000, memory_mib=64 * 1024)
    ask = ResourceRequest(4000, 16 * 1024, gpu_count=1)
    assert check_quota(quota, Usage({}, 12_000, 0), ask) is None
    assert (
        check_quota(quota, Usage({}, 14_000, 0), ask)
        == "quota: 14/16 CPUs in use (4 more requested)"
    )
    assert check_quota(quota, Usage({}, 0, 60 * 1024), ask) == (
        "quota: 60/64 GiB of memory in use (16 GiB more requested)"
    )
    assert (
        check_quota(quota, Usage({"x": 4000}), ask) == "quota: 4/4 GPUs in use (1 more requested)"
    )
    assert check_quota(Quota(), Usage({"x": 10**9}, 10**9, 10**9), ask) is None


def test_usage_from_bindings() -> None:
    usage = Usage.from_bindings(
        [
            Binding("n1", (0, 1), 1000, 2000, 100),
            Binding("n2", (3,), 250, 500, 50),
            Binding("n3", (), 0, 1, 1),
        ],
        {"n1": "h100", "n2": "a10", "n3": ""},
    )
    assert usage.gpu_milli_by_type == {"h100": 2000, "a10": 250}
    assert (usage.cpu_milli, usage.memory_mib, usage.gpu_milli_total) == (2501, 151, 2250)


def test_a_request_for_any_gpu_model_avoids_only_the_models_at_their_limit() -> None:
    # Found by trying quotas at their edge: {"H100": 1} narrowed an any-model ask to H100
    # alone (refused once that was used, though A10 nodes were free and unlimited), and
    # {"H100": 0, "*": 8} let it land on H100 (over that quota).
    anything = ResourceRequest(1000, 1024, gpu_count=1)
    one_h100 = Quota(gpus_by_type={"H100": 1})
    assert narrow_to_quota(one_h100, Usage({}), anything) == anything
    used = narrow_to_quota(one_h100, Usage({"H100": 1000}), anything)
    assert used is not None and used.gpu_types_excluded == ("H100",)
    assert used.allows_gpu_type("A10") and not used.allows_gpu_type("H100")
    assert check_quota(one_h100, Usage({"H100": 1000}), anything) is None
    no_h100 = narrow_to_quota(Quota(gpus_by_type={"H100": 0, "*": 8}), Usage({}), anything)
    assert no_h100 is not None and no_h100.gpu_types_excluded == ("H100",)
    # "*" limits each other model on its own: one at its limit is excluded too.
    star = Quota(gpus_by_type={"H100": 4, "*": 2})
    full_a10 = narrow_to_quota(star, Usage({"A10": 2000}), anything)
    assert full_a10 is not None and full_a10.gpu_types_excluded == ("A10",)
    # An ask beyond the "*" limit fits only the named models with room.
    three = ResourceRequest(1000, 1024, gpu_count=3)
    only_named = narrow_to_quota(star, Usage({}), three)
    assert only_named is not None and only_named.gpu_types == ("H100",)
    assert narrow_to_quota(star, Usage({"H100": 2000}), three) is None
    assert check_quota(star, Usage({"H100": 2000}), three) == (
        "quota: 2/4 H100 GPUs in use, 0/2 other-type GPUs in use (3 more requested)"
    )
