"""Data: offline tokenisation to ArrayRecord shards, and the Grain loader training reads them with."""
