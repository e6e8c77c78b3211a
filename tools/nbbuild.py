"""Write a notebook from a list of ("md" | "code" | "params", source) cells.

Notebooks are committed without outputs and with the ``parameters`` tag papermill needs;
``python tools/nbbuild.py`` is how the series' .ipynb files are (re)generated from the
``notebooks/src/*.py`` cell lists, so a diff of a notebook is a diff of plain Python.
"""

import runpy
import sys
from pathlib import Path

import nbformat


def build(cells, path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "kilib", "display_name": "Python (kilib)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n")


def main(argv):
    root = Path(__file__).resolve().parent.parent
    sources = [Path(a) for a in argv] or sorted((root / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
    for src in sources:
        cells = runpy.run_path(str(src))["CELLS"]
        target = root / "notebooks" / (src.stem + ".ipynb")
        build(cells, target)
        print(f"wrote {target.relative_to(root)}")


if __name__ == "__main__":
    main(sys.argv[1:])
