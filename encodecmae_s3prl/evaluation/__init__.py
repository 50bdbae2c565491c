"""Evaluation: upstreams compared on probes under the HEAR 2021 protocol, and the HEAR API.

- ``hear_protocol``: cached embeddings and the heareval 2021.1.3 scene-task rules, over every task in one table
  (our probe folders and s3prl's recipes);
- ``recipe_tasks``: s3prl's ``speech_commands`` and ``emotion`` recipes read as tasks;
- ``compare``: the side-by-side command (``python -m encodecmae_s3prl.compare``);
- ``hear_api``: the HEAR module interface for the organisers' kit (``encodecmae_s3prl.hear_api``).

It builds on ``downstream_probes`` (the task contract, the MLP, metrics) and on the s3prl integration
(``registry``, ``compat``); neither imports it.
"""
