"""Shared helpers of the HTML reports: the jinja2 environment and inline PNGs."""

from __future__ import annotations

import base64
import io

import numpy as np


def render_template(name: str, **context) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("fairloop.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    return env.get_template(name).render(**context)


def figure_png(fig) -> str:
    """A matplotlib figure as a ``data:`` URI; the figure is closed (pyplot keeps open ones alive)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_png(pixels: np.ndarray) -> str:
    """An HWC uint8 image as a ``data:`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
