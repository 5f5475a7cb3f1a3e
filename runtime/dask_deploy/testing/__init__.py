"""Test doubles shipped with the package, for users as much as for our tests."""
