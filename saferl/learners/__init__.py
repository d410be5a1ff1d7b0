"""saferl.learners: one module per algorithm, and the pieces they share.

Learners (each ``needs(settings) -> Needs`` and ``run(setup, settings, resources, output) ->
RunResult``): :mod:`~saferl.learners.ppo_lag`, :mod:`~saferl.learners.mocan`,
:mod:`~saferl.learners.pecan`, :mod:`~saferl.learners.preference`.

Shared pieces: :mod:`~saferl.learners.rollout` (the experience maker),
:mod:`~saferl.learners.advantages`, :mod:`~saferl.learners.ppo_update`,
:mod:`~saferl.learners.preference_update`, :mod:`~saferl.learners.scorers`,
:mod:`~saferl.learners.sft`, :mod:`~saferl.learners.score_model`; what a run writes and returns:
:mod:`~saferl.learners.output`, :mod:`~saferl.learners.result`, :mod:`~saferl.learners.run_state`.
"""
