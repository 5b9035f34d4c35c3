"""The inference engine: the facade (`UltraAdaptiveKVCacheEngine`), its config, the model
runner and demo model, prompt encoding, sampling, the request type, continuous
batching (`batching`, where the decode loop lives) and grammar-constrained
output (`structured`). Import the module you need: this package imports nothing."""
