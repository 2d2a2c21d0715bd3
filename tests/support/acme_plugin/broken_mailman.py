"""A plugin whose import fails, as a third party's broken release would."""

raise ImportError("acme's SDK is not installed")
