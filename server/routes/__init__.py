"""Thin HTTP routers: parse, call the service or store, render."""
