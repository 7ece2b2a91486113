"""``bench perf``: how fast the harness runs (training, sampling, evaluation), measured side by
side in one process. Methods are found through the METHODS registry and their public contract
(``Method.training_stage``, ``Method.sampler``), so adding a method needs no edit here."""
