"""unlearnd core: the science of the service (losses, Fisher/FILA, unlearning loop, metrics, exact export).

Knows nothing of HTTP or SQL: it takes models, tokenizers, records and a config and returns adapters and
metrics, so it can be used as a library as well as by the worker.
"""
