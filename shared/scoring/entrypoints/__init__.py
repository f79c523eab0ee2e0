"""Entry files that run as scripts: spark-submit takes a file, not a module.

Each sits alone in this folder because Python puts a script's folder first on
``sys.path``; beside other modules, their names would shadow top-level imports.
"""
