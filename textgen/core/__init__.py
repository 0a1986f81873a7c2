"""What every engine shares: configuration, request validation, outputs, admission, the
engine interface, CPU threads, the KV budget and model loading."""
