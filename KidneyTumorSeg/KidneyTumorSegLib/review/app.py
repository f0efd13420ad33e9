"""The review page: the case list beside Slicer's axial, coronal and sagittal views of the case
shown, served by trame with trame-slicer's remote-rendered slice views (the 'review' extra).

The CT is the background layer, the label map the label layer (kidney and tumor in the module's
colours), the uncertainty the foreground layer when asked for, and the crop box an ROI.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import slicer
from aiohttp import web
from trame.app import TrameApp
from trame.decorators import change, trigger
from trame.widgets import client, html, vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

from ..colours import BOX_COLOURS, LABEL_COLOURS
from ..mrml.roi import RoiStyle, show_roi
from ..mrml.uncertainty import set_overlay, show_uncertainty
from ..mrml.volumes import set_volume_image
from .access import TOKEN_COOKIE, TOKEN_PARAMETER, Access
from .cases import SIDES, ReviewCase
from .decisions import STATUSES, UNREVIEWED, DecisionFileError, read_decisions, resume_index, save_decision
from .loading import CaseVolumes, Prefetcher
from .slicer_command import slicer_command

logger = logging.getLogger(__name__)

WINDOW_LEVELS = {"abdomen": (400.0, 40.0), "kidney": (300.0, 100.0)}  # (window, level) in HU
LAYOUT_ID = "review"
PREFETCH_DELAY_S = 1.5  # the next case is read once this case is drawn (reading it at once slows the drawing)
CROP_SHOWN = RoiStyle(color=BOX_COLOURS["crop"].rgb, locked=True)  # the review shows the box; Slicer edits it
KEYS_SCRIPT = """
window.addEventListener('keydown', (event) => {
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(event.target.tagName) || event.ctrlKey || event.metaKey || event.altKey) return;
  const action = {n: 'next', p: 'previous', a: 'accepted', c: 'needs correction', r: 'rejected', u: 'uncertainty'}[event.key];
  if (action) { event.preventDefault(); window.trame.trigger('review_key', [action, window.trame.state.get('note')]); }
});
"""


class ReviewApp(TrameApp):
    """The page over ``folder``'s ``cases`` (in review order), served as ``access`` says."""

    def __init__(self, folder: Path, cases: list[ReviewCase], access: Access, server: Any = None):
        super().__init__(server)
        self.folder, self.cases, self.access = folder, cases, access
        self.decisions = read_decisions(folder, [case.name for case in cases])
        self.dice: dict[str, dict[str, float]] = {}
        self.prefetcher = Prefetcher()
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()]))
        self.layout_manager.set_layout(LAYOUT_ID)
        self.nodes = self._create_nodes()
        self.current: int | None = None
        self.shown: CaseVolumes | None = None  # the volume nodes show these arrays: they must live while shown
        self._init_state()
        self._build_ui()
        if access.token is not None:
            self.ctrl.on_server_bind.add(self._require_token)
        if cases:
            self.open_case(resume_index([case.name for case in cases], self.decisions))

    # -- scene -------------------------------------------------------------------------------
    def _create_nodes(self) -> dict[str, Any]:
        scene = self.slicer_app.scene
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the uncertainty's colour bar
        self.slicer_app.app_logic.GetColorLogic().SetMRMLApplicationLogic(self.slicer_app.app_logic)
        colours = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "KidneyTumorSegLabels")
        colours.SetTypeToUser()
        colours.SetNumberOfColors(max(LABEL_COLOURS) + 1)
        colours.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for label, colour in LABEL_COLOURS.items():
            colours.SetColor(label, colour.name, *colour.rgb, 1.0)
        ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        ct.CreateDefaultDisplayNodes()
        ct.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Labels")
        labels.CreateDefaultDisplayNodes()
        labels.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
        return {"ct": ct, "labels": labels, "uncertainty": None, "crop": None}

    def _show_volumes(self, volumes: CaseVolumes, case: ReviewCase) -> None:
        ct, labels = self.nodes["ct"], self.nodes["labels"]
        set_volume_image(labels, volumes.labels)
        set_volume_image(ct, volumes.ct if volumes.ct is not None else volumes.labels)
        self._apply_window_level()
        for index in range(self.slicer_app.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.slicer_app.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(ct.GetID())
            composite.SetLabelVolumeID(labels.GetID())
            composite.SetLabelOpacity(0.6)
        if volumes.uncertainty is not None:
            self.nodes["uncertainty"] = show_uncertainty(self.nodes["uncertainty"], volumes.uncertainty, self.slicer_app.scene,
                                                         "Uncertainty", ct, visible=self.state.show_uncertainty)
        elif self.nodes["uncertainty"] is not None:
            set_overlay(self.nodes["uncertainty"], False)
            self.nodes["uncertainty"].SetAndObserveImageData(None)
        self.nodes["crop"] = show_roi(self.nodes["crop"], case.crop, self.slicer_app.scene, "Crop", CROP_SHOWN)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()
            view.schedule_render()

    def _apply_window_level(self) -> None:
        window, level = WINDOW_LEVELS[self.state.window_level]
        display = self.nodes["ct"].GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(window, level)

    # -- cases -------------------------------------------------------------------------------
    def open_case(self, index: int) -> None:
        """Show case ``index`` of the list, then read the next one in the background."""
        index = max(0, min(index, len(self.cases) - 1))
        case = self.cases[index]
        start = time.perf_counter()
        try:
            volumes = self.prefetcher.get(case)
        except Exception as error:  # an unreadable case is reported on the page; the others stay reviewable
            self.state.message = f"{case.name}: cannot show it ({str(error).splitlines()[0]})"
            return
        self.current, self.shown = index, volumes
        if volumes.dice is not None:
            self.dice[case.name] = volumes.dice
        self._show_volumes(volumes, case)
        self.state.update({
            "current": index, "case_name": case.name, "has_uncertainty": volumes.uncertainty is not None,
            "side_rows": side_rows(case), "slicer_command": slicer_command(case), "case_dice": dice_text(volumes.dice),
            "note": self.decisions[case.name].note if case.name in self.decisions else "",
            "shown_seconds": round(time.perf_counter() - start, 3),
        })
        self._refresh_list()
        if index + 1 < len(self.cases):
            self.prefetcher.prefetch(self.cases[index + 1], delay_s=PREFETCH_DELAY_S)

    def decide(self, status: str, note: str | None = None) -> None:
        """Save ``status`` with ``note`` (the note as the page held it when the button or key was
        pressed: its last keystrokes may not have reached the server yet) for the case shown."""
        if self.current is None:
            return
        case = self.cases[self.current]
        try:
            saved = save_decision(self.folder, case.name, status, note if note is not None else self.state.note or "")
        except (DecisionFileError, OSError) as error:
            self.state.message = f"not saved: {str(error).splitlines()[0]}"
            return
        self.decisions[case.name] = saved.decision
        self.state.message = saved.message
        self._refresh_list()

    def _refresh_list(self) -> None:
        rows = [case_row(index, case, self.decisions.get(case.name), self.dice.get(case.name))
                for index, case in enumerate(self.cases)]
        self.state.update({"cases": rows, "reviewed": sum(row["status"] != UNREVIEWED for row in rows),
                           "status": rows[self.current]["status"] if self.current is not None else UNREVIEWED})

    # -- page events -------------------------------------------------------------------------
    @trigger("review_key")
    def on_key(self, action: str, note: str | None = None) -> None:
        if action == "next" and self.current is not None:
            self.open_case(self.current + 1)
        elif action == "previous" and self.current is not None:
            self.open_case(self.current - 1)
        elif action == "uncertainty":
            self.state.show_uncertainty = not self.state.show_uncertainty
        elif action in STATUSES:
            self.decide(action, note)

    @change("show_uncertainty")
    def on_uncertainty(self, show_uncertainty: bool, **_: Any) -> None:
        set_overlay(self.nodes["uncertainty"], bool(show_uncertainty) and self.state.has_uncertainty, self.nodes["ct"])
        self._render()

    @change("window_level")
    def on_window_level(self, **_: Any) -> None:
        self._apply_window_level()
        self._render()

    def _render(self) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            view.schedule_render()

    def _init_state(self) -> None:
        self.state.update({
            "trame__title": "KidneyTumorSeg review", "cases": [], "case_count": len(self.cases), "reviewed": 0,
            "current": None, "case_name": "", "status": UNREVIEWED, "note": "", "message": "", "side_rows": [],
            "case_dice": "", "slicer_command": "", "show_uncertainty": False, "has_uncertainty": False,
            "window_level": "abdomen", "window_levels": list(WINDOW_LEVELS), "shown_seconds": None,
            "folder": str(self.folder)})

    # -- page layout -------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, width=520) as layout:
            self.ui = layout
            client.Script(KEYS_SCRIPT)
            layout.title.set_text("KidneyTumorSeg review")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("{{ reviewed }} of {{ case_count }} reviewed", id="reviewed-count", classes="mx-4")
                v3.VSelect(v_model=("window_level",), items=("window_levels",), label="window / level", density="compact",
                           hide_details=True, style="max-width: 160px", id="window-level")
                v3.VSwitch(v_model=("show_uncertainty",), label="uncertainty (u)", disabled=("!has_uncertainty",),
                           hide_details=True, density="compact", classes="mx-4", id="uncertainty-toggle")
            with layout.drawer:
                self._case_table()
            with layout.content:
                self._case_view()

    def _case_table(self) -> None:
        with v3.VTable(density="compact", hover=True, id="case-list"):
            with html.Thead():
                with html.Tr():
                    for title in ("case", "review", "kidney L / R mL", "tumor L / R mL", "Dice K / T", "status"):
                        html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in cases", key="row.name", click=(self.open_case, "[row.index]"),
                             raw_attrs=[':data-case="row.name"', ':data-status="row.status"'],
                             style=("row.index === current ? 'background: rgba(78, 155, 255, 0.25); cursor: pointer' "
                                    ": 'cursor: pointer'",)):
                    html.Td("{{ row.name }}")
                    html.Td("{{ row.review }}")
                    html.Td("{{ row.kidney }}")
                    html.Td("{{ row.tumor }}")
                    html.Td("{{ row.dice }}")
                    html.Td("{{ row.status }}")

    def _case_view(self) -> None:
        with html.Div(classes="d-flex flex-column pa-2", style="height: calc(100vh - 64px)"):
            with html.Div(classes="d-flex align-center flex-wrap"):
                html.H3("{{ case_name }}", id="case-name", classes="mr-4")
                html.Span("status: {{ status }}", id="case-status", classes="mr-4")
                v3.VBtn("previous (p)", click=(self.on_key, "['previous']"), id="previous", size="small", classes="mr-1")
                v3.VBtn("next (n)", click=(self.on_key, "['next']"), id="next", size="small", classes="mr-4")
                v3.VBtn("accept (a)", click=(self.decide, "['accepted', note]"), id="accept", color="success", size="small", classes="mr-1")
                v3.VBtn("needs correction (c)", click=(self.decide, "['needs correction', note]"), id="correct", color="warning",
                        size="small", classes="mr-1")
                v3.VBtn("reject (r)", click=(self.decide, "['rejected', note]"), id="reject", color="error", size="small", classes="mr-4")
                v3.VTextField(v_model=("note",), label="note", density="compact", hide_details=True, id="note",
                              style="min-width: 200px")
            with html.Div(classes="d-flex my-1 text-body-2"):
                html.Span("{{ message }}", id="message", classes="flex-grow-1")
                html.Span("read and shown in {{ shown_seconds }} s", v_if="shown_seconds !== null", id="shown-seconds",
                          classes="text-caption")
            with html.Div(style="flex: 1 1 auto; min-height: 300px; position: relative", id="views"):
                self.layout_manager.initialize_layout_grid(self.ui)
            with html.Div(classes="d-flex flex-wrap mt-2"):
                with v3.VTable(density="compact", id="side-table", classes="mr-4", style="max-width: 420px"):
                    with html.Thead():
                        with html.Tr():
                            for title in ("", "left mL", "right mL"):
                                html.Th(title)
                    with html.Tbody():
                        with html.Tr(v_for="row in side_rows", key="row.name"):
                            html.Td("{{ row.name }}")
                            html.Td("{{ row.left }}")
                            html.Td("{{ row.right }}")
                with html.Div(style="flex: 1; min-width: 300px"):
                    html.Div("Dice (kidney / tumor): {{ case_dice }}", v_if="case_dice", classes="text-body-2")
                    html.Div("Open in Slicer to correct (Segment Editor, crop box):", classes="text-body-2")
                    html.Pre("{{ slicer_command }}", id="slicer-command",
                             style="white-space: pre-wrap; font-size: 11px; max-height: 120px; overflow: auto")
                    html.Div("Keys: n / p next / previous, a accept, c needs correction, r reject, u uncertainty. "
                             f"Crop box: {BOX_COLOURS['crop'].name}.", classes="text-caption")

    # -- access ------------------------------------------------------------------------------
    def _require_token(self, wslink_server: Any) -> None:
        """Refuse every request (page, files, websocket) that brings neither the token nor its cookie."""
        access = self.access

        @web.middleware
        async def token_check(request: web.Request, handler: Any) -> web.StreamResponse:
            query_token = request.query.get(TOKEN_PARAMETER)
            if not access.allows(query_token, request.cookies.get(TOKEN_COOKIE)):
                return web.Response(status=403, text="kidneytumorseg review: open the address with its token, as printed at start-up\n")
            response = await handler(request)
            if query_token is not None and not response.prepared:
                response.set_cookie(TOKEN_COOKIE, query_token, httponly=True, samesite="Strict")
            return response

        wslink_server.app.middlewares.append(token_check)


def case_row(index: int, case: ReviewCase, decision: Any, dice: dict[str, float] | None) -> dict[str, Any]:
    """The case list's row of ``case``."""
    review = "unknown" if case.flagged is None else "flagged" if case.flagged else "no"
    if case.score is not None:
        review += f" ({case.score:.2f})"
    return {"index": index, "name": case.name, "review": review, "kidney": _sides(case.kidney_ml),
            "tumor": _sides(case.tumor_ml), "dice": dice_text(dice), "status": decision.status if decision else UNREVIEWED}


def side_rows(case: ReviewCase) -> list[dict[str, str]]:
    """The per-side table: kidney and tumor mL on the patient's left and right."""
    return [{"name": name, **{side: _ml(volumes.get(side)) for side in SIDES}}
            for name, volumes in (("kidney", case.kidney_ml), ("tumor", case.tumor_ml))]


def dice_text(dice: dict[str, float] | None) -> str:
    return "" if dice is None else f"{dice['kidney_dice']:.3f} / {dice['tumor_dice']:.3f}"


def _sides(volumes: dict[str, float]) -> str:
    return " / ".join(_ml(volumes.get(side)) for side in SIDES)


def _ml(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"
