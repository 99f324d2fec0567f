"""A real browser shows a FigureView in JupyterLab: plotly.js draws the kernel's figure, and a new figure redraws it.

Debian's Chromium, driven by Playwright (``browser_lab``), runs a two-cell notebook of
this test's own that shows a plotly figure of seven markers, and checks in the page (not
in the kernel) that plotly.js drew one trace of seven points and its title. The kernel
then assigns a figure of twelve markers to the view's ``figure``; the page redraws it.
A screenshot goes to ``test-artifacts/figure.png``.
"""

from __future__ import annotations

from browser_lab import ARTIFACTS, open_notebook, put_notebook, run_all
from playwright.sync_api import Browser, Page

NOTEBOOK = "figure_view.ipynb"
CELLS = [
    "import plotly.graph_objects as go\n"
    "from labkit.lab.chart import FigureView\n\n"
    "def squares(n):\n"
    "    return go.Figure(go.Scatter(x=list(range(n)), y=[i * i for i in range(n)], mode='markers'),\n"
    "                     layout={'title': {'text': f'{n} squares'}, 'width': 600, 'height': 350})\n\n"
    "view = FigureView(squares(7))\n"
    "view",
    "print('figure shown')",
]
# What the page shows of the figure: traces plotly holds, markers drawn, the title.
FIGURE_STATE = """() => {
    const gd = document.querySelector('.labkit-chart .js-plotly-plot');
    if (!gd) return null;
    return {
        traces: (gd.data || []).length,
        points: gd.querySelectorAll('.scatterlayer path.point').length,
        title: (gd.querySelector('.gtitle') || {}).textContent || null,
    };
}"""


def wait_for_drawn(page: Page, points: int, title: str) -> None:
    try:
        page.wait_for_function(
            "([points, title]) => "
            f"{{ const s = ({FIGURE_STATE})(); "
            "return s && s.traces === 1 && s.points === points && s.title === title; }",
            arg=[points, title],
            timeout=30_000,
        )
    except Exception as exc:
        page.screenshot(path=str(ARTIFACTS / "figure-failed.png"), full_page=True)
        raise AssertionError(
            f"the figure is not drawn with {points} points and {title!r}: {page.evaluate(FIGURE_STATE)}") from exc


def test_a_figure_view_draws_the_figure_and_redraws_a_new_one(lab_server: tuple[str, str], chromium: Browser):
    put_notebook(lab_server, NOTEBOOK, CELLS)
    page = open_notebook(chromium, lab_server, NOTEBOOK)
    run_all(page, "figure shown", "figure")
    wait_for_drawn(page, 7, "7 squares")

    # A new figure from the kernel (as a cell would assign it) reaches the view that is already drawn.
    page.evaluate("""() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel
        .requestExecute({code: 'view.figure = squares(12)'}).done""")
    wait_for_drawn(page, 12, "12 squares")
    page.locator(".labkit-chart").first.screenshot(path=str(ARTIFACTS / "figure.png"))
