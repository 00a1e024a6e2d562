"""nac.accel: emit a `.nac` model as C for bare-metal RISC-V (QEMU `virt`) or the host, build it,
run it and check it against the engine (`emit`, `build_and_run`, `verify`)."""
from nac.accel.backend import ACALSimBackend
from nac.accel.emit import SUPPORTED, TARGETS, EmitReport, emit
from nac.accel.verify import RunResult, build_and_run, toolchain_check, verify

__all__ = ["ACALSimBackend", "emit", "EmitReport", "build_and_run", "verify", "RunResult", "toolchain_check", "SUPPORTED", "TARGETS"]
