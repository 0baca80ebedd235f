"""Static images beside plotly figures, so a saved notebook shows its figures where no JavaScript runs.

A figure's output is its JSON (`application/vnd.plotly.v1+json`), which only JupyterLab or VS Code can draw:
nbconvert's HTML and a code host's preview show nothing. After `static_images()`, each figure displayed also
carries an image in the same output, drawn by Kaleido with the system's Chromium: JupyterLab still shows the
interactive figure, everything else shows the picture. `make notebooks` turns it on in every notebook it runs.

    import widgets
    widgets.static_images()            # PNG at the figure's own size; fmt="svg" for vector images
"""
from __future__ import annotations

import plotly.io as pio
from plotly.io.base_renderers import PngRenderer, SvgRenderer


class _OneBrowser:
    def to_mimebundle(self, fig_dict):
        # Imported here: `import widgets` should not pay for a browser driver it may never use.
        import kaleido

        # One Chromium for the whole session, started by the first image (about 2.5 s, then 0.2 s an image;
        # a browser per image costs 4.5 s each), and no MathJax, which Kaleido would fetch from a CDN.
        kaleido.start_sync_server(mathjax=False, silence_warnings=True)
        return super().to_mimebundle(fig_dict)


class _Png(_OneBrowser, PngRenderer):
    pass


class _Svg(_OneBrowser, SvgRenderer):
    pass


RENDERERS = {"png": _Png, "svg": _Svg}


def static_images(fmt: str = "png", scale: float = 1.0) -> None:
    """From now on every plotly figure displayed carries a `fmt` image (png or svg) beside its JSON.

    `scale` multiplies the pixels of a PNG (2 is sharp on high-density screens and about 2.5 times the bytes)."""
    if fmt not in RENDERERS:
        raise ValueError(f"static_images: fmt must be one of {', '.join(RENDERERS)}, not {fmt!r}")
    name = f"labkit_{fmt}"
    pio.renderers[name] = RENDERERS[fmt](scale=scale)
    # Kaleido sends these headers only where it fetches from the web (it does not here) and, with one browser
    # for the session, warns on every image that it ignores them.
    pio.defaults.headers = {}
    pio.renderers.default = f"plotly_mimetype+{name}"
