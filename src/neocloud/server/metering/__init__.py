"""Metering: usage records from running time, tokens and storage, priced in integer
micro-dollars, and the pass that keeps budgets, invoices and the metrics history up to
date.

- ``records``: running time (``meter_running``, ``record_running``, ``gpus_of``) —
  called by the deployment, job and pod reconcilers;
- ``tokens``: ``UsageBuffer``, the gateway's usage sink (tokens and metrics history);
- ``ledger``: the request ledger, each gateway request stored before it is forwarded
  and before its answer ends (the invariant: no request lost or billed twice);
- ``recovery``: requests a dead gateway left unfinished, counted from the replicas;
- ``storage``: volume byte-hours;
- ``money`` / ``periods``: micro-dollar arithmetic and billing periods;
- ``loop``: ``MeteringLoop``, run after every reconcile pass;
- ``metrics``: the control plane's Prometheus collector.
"""
