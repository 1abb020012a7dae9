"""The peers Apex is measured against, on the same machine and the same DAGs."""
