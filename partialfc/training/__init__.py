"""The training runtime: the trainer (the loop), one step, the optimizer of backbone and centres,
checkpoints and resume, the run log, the stall watchdog, pre-emption, EMA, AMP and the LR schedule.

Above every component it composes (core, models, data, eval, metrics, config); nothing below
imports it.
"""
