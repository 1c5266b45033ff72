"""``llamafleet bench``: baseline against each speculation path (and Tightwad), as per-category
tables and speculation statistics, with the analytic speedup bound, JSON and charts."""
