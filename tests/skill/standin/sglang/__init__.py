"""A stand-in for SGLang's package, first on PYTHONPATH in the container-start tests."""
