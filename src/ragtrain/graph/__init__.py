"""The config graph: node kinds, config checks, job resources."""
