"""The one Jinja2 environment every card and page renders with: the templates/ folder, autoescaped (a tag or
an error message from a server is text, never markup), and strict, so a misspelt field fails the render
instead of showing nothing. dashboard.py adds its number formats as filters."""
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
