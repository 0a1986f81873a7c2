"""Text generation for the `llm` Triton model, importable and testable without Triton."""
