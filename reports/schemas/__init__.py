"""The JSON Schemas of fedguard's reports (a package, so that importlib.resources reads them from a zipped install too)."""
