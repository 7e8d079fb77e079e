"""The `distill` section of a student run's config.json (RunConfig.distill)."""

from __future__ import annotations

from dataclasses import dataclass

from ..jsonconfig import ConfigError, check_choice, check_count, check_number


@dataclass
class DistillConfig:
    """A student run (`diffusely distill`): consistency distillation (diffusely.distill) of the run in `teacher` (an
    absolute path; its weights of teacher_step) into a student that samples in `nfe` evaluations at `sigmas` (nfe
    levels, then 0; also in the student's schedules.json). Trained between the grid_steps + 1 levels of a Karras
    grid, against a target network averaged with decay target_decay per step (CM sec. 6: 18 and 0.95)."""

    teacher: str = ""
    teacher_step: int = 0
    nfe: int = 1
    sigmas: tuple[float, ...] = ()
    grid_steps: int = 18
    target_decay: float = 0.95
    method: str = "consistency"

    def __post_init__(self):
        self.sigmas = tuple(self.sigmas)
        check_choice("distill.method", self.method, ("consistency",))
        check_count("distill.nfe", self.nfe, 1, 64)
        check_count("distill.grid_steps", self.grid_steps, 2)
        check_count("distill.teacher_step", self.teacher_step, 0)
        check_number("distill.target_decay", self.target_decay, 0, 0.999999)
        if len(self.sigmas) != self.nfe + 1 or self.sigmas[-1] != 0 or any(
                a <= b for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ConfigError(f"distill.sigmas must hold nfe + 1 = {self.nfe + 1} decreasing sigmas ending in 0, got "
                              f"{list(self.sigmas)}")
