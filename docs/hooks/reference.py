"""MkDocs hook: the reference pages (docs/reference/*.md) are written at build time from the registries and the
command line (dltrain/reference.py), never by hand, so they cannot drift from the code."""

from mkdocs.structure.files import File

from dltrain import reference


def on_files(files, config):
    for page in [*reference.REGISTRIES, "cli"]:
        content = reference.cli_page() if page == "cli" else reference.registry_page(page)
        files.append(File.generated(config, f"reference/{page}.md", content=content))
    return files
