"""Floor 3, above tasks/: the experiments, their settings and the machinery that runs them.

Settings, one small file each (big_vision's configs): label_sweep, superstition,
real_material, real_photos; each says in its docstring the command that runs it and what
it costs, and holds the preset, the scales, the seeds and the runs (config fields over the
preset). Machinery: `launch` (an experiment by name), `sweeps` and `sweep_tables` (the
synthetic and composite sweeps), `photo_folds` and `photo_tables` (the real-photo folds),
`within_category` (settings and machinery in one file), `photo_eval` (what the real-photo
experiments share), `results_page` (RESULTS.md), `provenance` (the machine and versions
recorded with every result). tools/experiment.py only parses flags into `launch.Launch`.
"""
