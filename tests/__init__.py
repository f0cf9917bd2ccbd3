"""The test suite. A package, so that test files import shared code as ``tests.helpers``
(and never each other), whether pytest starts from the repository root or elsewhere."""
