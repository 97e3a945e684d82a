"""The training layer: what a run is (config), its data sources (data; record_index for the
`.idx` of `.rec` files), network set-up (network), learning-rate schedule (schedule), the loop
(loop), metrics, checkpoints, devices and seeds (runtime), multi-machine training over Horovod
(distributed), logs and curves (reporting), and side-by-side throughput
(throughput)."""
