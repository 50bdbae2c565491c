"""Evaluation under the HEAR 2021 protocol: what ``encodecmae_s3prl.compare`` (the side-by-side command),
``encodecmae_s3prl.table1`` and ``encodecmae_s3prl.hear_api`` (the HEAR module interface) are built on.

- ``hear_protocol``: cached embeddings and the heareval 2021.1.3 scene-task rules, over every task in one table
  (our probe folders and s3prl's recipes);
- ``recipe_tasks``: s3prl's ``speech_commands`` and ``emotion`` recipes read as tasks;
- ``native``: clips encoded at the rate each upstream's own model runs at;
- ``paper_table1``: the paper's Table 1 figures.

It builds on ``downstream_probes`` (the task contract, the MLP, metrics) and on the s3prl integration
(``registry``, ``compat``); neither imports it.
"""
