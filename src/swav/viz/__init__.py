"""Pictures of what a run learned: its curves, the images each prototype gathers, nearest
neighbours, a 2-D map of the features, and one HTML page with all of them."""

from swav.engine.curves import plot_loss_curve
from swav.viz.clusters import (
    PrototypeGroup,
    draw_gallery,
    draw_usage,
    export_clusters,
    gallery_listing,
    prototype_groups,
)
from swav.viz.curves import plot_run_curves
from swav.viz.data import ViewData, load_view
from swav.viz.embedding import draw_embedding, project_2d
from swav.viz.html import write_html_report
from swav.viz.neighbours import Neighbours, draw_neighbours, nearest

__all__ = [
    "plot_loss_curve",
    "plot_run_curves",
    "PrototypeGroup",
    "prototype_groups",
    "draw_gallery",
    "draw_usage",
    "export_clusters",
    "gallery_listing",
    "ViewData",
    "load_view",
    "project_2d",
    "draw_embedding",
    "Neighbours",
    "nearest",
    "draw_neighbours",
    "write_html_report",
]
