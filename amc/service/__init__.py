"""The service around the engine: MLflow tracking, the Pareto front, policy export, plots and the MLflow UI.

The engine (``import amc``) never imports this package, so it works without MLflow. The modules:

- :mod:`amc.service.tracking`: one MLflow run per search, metrics, artifacts, where the store is;
- :mod:`amc.service.candidates`: every policy an experiment's searches evaluated, read from MLflow;
- :mod:`amc.service.front`: the Pareto front and its hypervolume (moocore), its CSV / JSON tables;
- :mod:`amc.service.pareto`: the front of an experiment, written to files and logged back to MLflow;
- :mod:`amc.service.plots`: the PNG plots (policy bars, search curves, the front's scatter);
- :mod:`amc.service.export`: a policy as amc, Torch-Pruning or NNI files;
- :mod:`amc.service.ui`: the MLflow UI server on this project's store.
"""
