"""Side-by-side benchmarks: our figures and the references', measured in the same run."""
