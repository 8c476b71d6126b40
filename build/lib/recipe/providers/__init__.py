"""Providers: how stages reach models and services (HTTP APIs, managed local servers, caches).

Providers never import stages or the runner."""
