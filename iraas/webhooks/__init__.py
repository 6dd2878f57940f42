"""Signed webhooks: a request's final result POSTed to its callback URL (Standard Webhooks)."""
