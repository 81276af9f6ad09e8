"""The router: serves tera.v1.Engine by relaying each call to a healthy engine replica."""
