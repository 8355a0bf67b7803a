"""Quality, privacy, Pareto fronts and HTML reports (issue 7; not built yet)."""
