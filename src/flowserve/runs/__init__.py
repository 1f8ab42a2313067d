"""Running flows: the DAG runner and the service that records runs."""
