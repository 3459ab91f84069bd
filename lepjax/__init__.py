"""lepjax."""
