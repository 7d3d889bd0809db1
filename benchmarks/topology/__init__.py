"""The topology benchmark: the same towers, data and budget under each embedding geometry.

Run it as ``python benchmarks/topologies.py [--mode full|fast] ...`` (see docs/benchmarks-topologies.md).
The modules form layers, each importing only those above it in this list:

- :mod:`.geometry`: the one adapter to the library's geometry API (build a geometry by registry name, its
  temperature and loss);
- :mod:`.spec`: the topologies (a geometry by name and options, k, d, a temperature) and the plan's constants;
- :mod:`.stats`: intervals, paired differences, the one verdict rule;
- :mod:`.results`: results files of both modes, read into one schema; duplicate runs refused;
- :mod:`.fast` (the fast mode's engine), :mod:`.grid` (its plan and resume), :mod:`.full` (the full mode's
  runs through ``manifold-align train``): the runners;
- :mod:`.report`: the one report engine (tables, answers, plots) for both modes;
- :mod:`.cli`: the command line.
"""
