"""Reports from results: caption quality, privacy accounting, Pareto fronts, figures, the HTML report, timelines."""
