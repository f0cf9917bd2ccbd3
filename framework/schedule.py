"""The DDPM/DDIM schedule in paper indexing: kept as a name for :mod:`framework.process`.

``Schedule`` (what ``Backbone.schedule(num_steps, eta)`` returns), ``make_schedule`` and
``check_steps`` live in :mod:`framework.process`, with the process interface they implement.
"""

from __future__ import annotations

from framework.process import DDPMSchedule, ProcessSchedule, Schedule, check_steps, make_schedule

__all__ = ["DDPMSchedule", "ProcessSchedule", "Schedule", "check_steps", "make_schedule"]
