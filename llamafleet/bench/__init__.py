"""``llamafleet bench``: baseline against each speculation path (and Tightwad), in the seed report's
tables, with the analytic speedup bound, JSON and charts."""
