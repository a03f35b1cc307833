"""TFMQ-DM: temporal information block (TIB) detection, TIAR and BRECQ reconstruction, finite set calibration.

The method itself is `trtq.methods.tfmq` (recipes `w4a8-tfmq`, `w8a8-tfmq`, `w4a8-brecq`, ...); the
per-timestep quantizer it uses lives in `trtq.nn.timestep`.
"""

from trtq.tfmq.tib import TemporalModules, detect_temporal_modules

__all__ = ["TemporalModules", "detect_temporal_modules"]
