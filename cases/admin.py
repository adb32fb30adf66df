"""The case admin: a read-only view of every case and its history, plus operator actions.

Nothing here changes a case's state by itself.  Every action (retry, re-run, cancel,
priority) calls a function of :mod:`conductor.operations`, which refuses with a
``CaseStateError`` when it does not apply; the message is shown to the operator as is.
Fields are never editable: a saved form would write a stale copy of the row over whatever
the conductor did in the meantime.

The list is built for large tables: one query for the page (the GPU comes with it through
``select_related`` on the reverse one-to-one), no query per row, and no full ``COUNT(*)``
of an unfiltered big table (see :class:`EstimatedCountPaginator`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
)
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from cases import provenance, results
from cases.models import (
    ACTIVE_FIRST,
    Case,
    CaseEvent,
    QACriterion,
    ResultFile,
    WorkflowStep,
)
from conductor.operations import (
    case_cancel,
    case_cancel_preview,
    case_change_priority,
    case_retry,
)
from conductor.transitions import CaseStateError
from evaluation.dose import DoseFileError
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.times import format_duration

# --- small renderers (shared with the GPU admin) --------------------------------------


def status_badge(status: str, label: str | None = None) -> SafeString:
    """A coloured badge; the colour comes from the CSS class ``mqi-<status>``."""
    return format_html('<span class="mqi-badge mqi-{}">{}</span>', status.lower(), label or status)


def progress_bar(percent: int, status: str, caption: str = "") -> SafeString:
    percent = max(0, min(100, int(percent)))
    return format_html(
        '<span class="mqi-progress mqi-{}" title="{}%">'
        '<span class="mqi-progress-fill" style="width: {}%"></span></span>'
        ' <span class="mqi-progress-caption">{}</span>',
        status.lower(),
        percent,
        percent,
        caption or f"{percent}%",
    )


def gpu_link(gpu: GPUResource | None) -> SafeString | str:
    if gpu is None:
        return "—"
    url = reverse("admin:gpus_gpuresource_change", args=[gpu.pk])
    return format_html('<a href="{}">{}</a>', url, str(gpu))


def case_link(case: Case | None) -> SafeString | str:
    if case is None:
        return "—"
    url = reverse("admin:cases_case_change", args=[case.pk])
    return format_html('<a href="{}">{}</a>', url, case.case_id)


def gpu_links(gpus: list[GPUResource]) -> SafeString | str:
    if not gpus:
        return "—"
    return format_html_join(", ", "{}", ((gpu_link(gpu),) for gpu in gpus))


def qa_badge(case: Case) -> SafeString | str:
    """QA passed / QA failed / not evaluated; a dash while the case has not got that far."""
    verdict = case.qa_verdict
    if not verdict:
        if not case.is_terminal:
            return "—"
        verdict = Case.QAVerdict.NOT_EVALUATED
    label = Case.QAVerdict(verdict).label
    return format_html('<span class="mqi-badge mqi-qa-{}">{}</span>', verdict.lower(), label)


# --- operator actions: one definition serves the list and the detail page --------------


@dataclass(frozen=True)
class OperatorAction:
    """An action an operator can take on one object.

    ``run(obj, actor)`` calls the conductor and returns the success message, or raises
    ``CaseStateError`` when the action does not apply.  ``offered(obj)`` only decides
    whether the detail page shows the button; the conductor decides what is allowed.
    """

    name: str
    label: str
    run: Callable[[Any, str], str]
    offered: Callable[[Any], bool]
    danger: bool = False
    # What the action would do to these objects, for a confirmation page; None: it is
    # safe enough to run at once.
    consequences: Callable[[Sequence[Any]], Consequences | None] | None = None


@dataclass(frozen=True)
class Consequences:
    """What an action would do, shown on its confirmation page before it runs."""

    per_object: list[tuple[Any, list[str]]]
    warnings: list[str] = field(default_factory=list)


CONFIRMED = "yes"  # the confirmation page posts post=yes, as Django's delete confirmation


MAX_MESSAGES_PER_KIND = 20
LIVE_REFRESH_SECONDS = 5


class OperatorActionsAdmin(admin.ModelAdmin):
    """Read-only admin whose only way to change anything is its operator actions.

    Subclasses list their ``operator_actions``; each becomes a list action and a POST
    button on the detail page, and both check ``has_change_permission`` on the server.
    """

    operator_actions: Sequence[OperatorAction] = ()
    change_form_template = "cases/admin/operator_change_form.html"
    empty_value_display = "—"  # as every other empty value on these pages

    # -- read-only ---------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, *args, **kw):
        if request.method == "POST":
            # No form here saves: a stale copy must never overwrite the conductor's writes.
            return HttpResponseNotAllowed(["GET"])
        return super().changeform_view(request, object_id, *args, **kw)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        raise PermissionDenied("this admin is read-only; use its actions")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        title = capfirst(self.opts.verbose_name_plural)
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    # -- detail page buttons -----------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/operator/<slug:action_name>/",
                self.admin_site.admin_view(self.operator_action_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_operator_action",
            )
        ]
        return own + super().get_urls()

    def operator_action_view(
        self, request: HttpRequest, object_id: str, action_name: str
    ) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        action = self._operator_action(action_name)
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"no {self.opts.verbose_name} with id {object_id!r}")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        confirmation = self.confirmation(request, action, [obj], from_list=False)
        if confirmation is not None:
            return confirmation
        self.run_operator_action(request, action, [obj])
        return redirect(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", obj.pk)

    def confirmation(
        self,
        request: HttpRequest,
        action: OperatorAction,
        objects: Sequence[Any],
        *,
        from_list: bool,
    ) -> TemplateResponse | None:
        """The page that says what ``action`` would do, until it is posted with post=yes;
        None when the action needs no confirmation or has it."""
        if action.consequences is None or request.POST.get("post") == CONFIRMED:
            return None
        if not self.has_change_permission(request):
            raise PermissionDenied
        consequences = action.consequences(objects)
        if consequences is None:
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.label}: are you sure?",
            "opts": self.opts,
            "action": action,
            "consequences": consequences,
            "objects": objects,
            "from_list": from_list,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "cases/admin/operator_confirmation.html", context)

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args, **kw):
        obj = context.get("original")
        # A page to read, not a form to fill in: no "Change case" title, no save buttons.
        context.update(title=capfirst(self.opts.verbose_name), show_save=False)
        context.update(show_save_and_continue=False, show_save_and_add_another=False)
        if obj is not None:
            context.update(operator_buttons=self._buttons(request, obj))
            context.update(self.detail_context(obj))
        return super().render_change_form(request, context, *args, **kw)

    def detail_context(self, obj: Any) -> dict[str, Any]:
        """More for the detail page's template; subclasses add what they show."""
        return {}

    # -- running an action -------------------------------------------------------------

    def run_operator_action(
        self, request: HttpRequest, action: OperatorAction, objects: Iterable[Any]
    ) -> None:
        """Run ``action`` on each object and report each success or refusal."""
        if not self.has_change_permission(request):
            raise PermissionDenied  # also a forged POST of a list action by a viewer
        done: list[str] = []
        refused: list[str] = []
        for obj in objects:
            try:
                message = action.run(obj, request.user.get_username())
            except CaseStateError as exc:
                refused.append(str(exc))
                continue
            self.log_change(request, obj, message)
            done.append(message)
        _report(request, messages.SUCCESS, done)
        _report(request, messages.ERROR, refused)

    def _operator_action(self, name: str) -> OperatorAction:
        for action in self.operator_actions:
            if action.name == name:
                return action
        raise Http404(f"no action {name!r}")

    def _buttons(self, request: HttpRequest, obj: Any) -> list[dict[str, Any]]:
        if not self.has_change_permission(request, obj):
            return []
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_operator_action"
        return [
            {"action": action, "url": reverse(name, args=[obj.pk, action.name])}
            for action in self.operator_actions
            if action.offered(obj)
        ]


def list_actions(actions: Sequence[OperatorAction]) -> list[Callable[..., None]]:
    """The admin list actions for ``actions``; Django offers them to users with change
    permission only, and ``run_operator_action`` checks again."""
    return [_list_action(action) for action in actions]


def _list_action(action: OperatorAction) -> Callable[..., None]:
    @admin.action(permissions=["change"], description=action.label)
    def run(
        modeladmin: OperatorActionsAdmin, request: HttpRequest, queryset: QuerySet
    ) -> TemplateResponse | None:
        objects = list(queryset)
        confirmation = modeladmin.confirmation(request, action, objects, from_list=True)
        if confirmation is not None:
            return confirmation
        modeladmin.run_operator_action(request, action, objects)
        return None

    run.__name__ = action.name
    return run


def _report(request: HttpRequest, level: int, lines: list[str]) -> None:
    for line in lines[:MAX_MESSAGES_PER_KIND]:
        messages.add_message(request, level, line)
    if len(lines) > MAX_MESSAGES_PER_KIND:
        more = len(lines) - MAX_MESSAGES_PER_KIND
        messages.add_message(request, level, f"... and {more} more like these")


# --- the case actions -----------------------------------------------------------------


def _retry(case: Case, actor: str) -> str:
    case, said = case_retry(case_pk=case.pk, from_start=False, actor=actor)
    return f"Case {case.case_id}: folder checked again, {said}"


def _rerun(case: Case, actor: str) -> str:
    case, said = case_retry(case_pk=case.pk, from_start=True, actor=actor)
    return f"Case {case.case_id}: folder checked again, {said}"


def _cancel(case: Case, actor: str) -> str:
    case = case_cancel(case_pk=case.pk, actor=actor)
    return f"Case {case.case_id}: cancelled"


def _cancel_consequences(cases: Sequence[Case]) -> Consequences:
    per_case = []
    for case in cases:
        try:
            lines = case_cancel_preview(case_pk=case.pk)
        except CaseStateError as exc:
            lines = [f"nothing: {exc}"]
        per_case.append((case, lines))
    return Consequences(per_case)


def _change_priority(by: int) -> Callable[[Case, str], str]:
    def change(case: Case, actor: str) -> str:
        # Read the current value, not the one the page was rendered with.
        case = case_change_priority(case_pk=case.pk, by=by, actor=actor)
        return f"Case {case.case_id}: priority {case.priority - by} -> {case.priority}"

    return change


def _restartable(case: Case) -> bool:
    return case.status in (Case.Status.FAILED, Case.Status.CANCELLED)


def _active(case: Case) -> bool:
    return not case.is_terminal


CASE_ACTIONS = (
    OperatorAction("retry_failed_step", "Retry from the failed step", _retry, _restartable),
    OperatorAction("rerun_from_start", "Re-run from the start", _rerun, _restartable),
    OperatorAction("raise_priority", "Raise priority", _change_priority(+1), _active),
    OperatorAction("lower_priority", "Lower priority", _change_priority(-1), _active),
    OperatorAction(
        "cancel", "Cancel", _cancel, _active, danger=True, consequences=_cancel_consequences
    ),
)


# --- list helpers: paginator and filters ----------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Exact counts, except for a whole big table on PostgreSQL, where the planner's row
    estimate is used: ``COUNT(*)`` reads every row and slows each page of a big list.

    Filtered lists (a status, a search) are counted exactly; they use the indexes.
    """

    exact_below = 100_000

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is not None and not query.where:
            estimate = _estimated_rows(self.object_list)
            if estimate >= self.exact_below:
                return estimate
        return super().count


def _estimated_rows(queryset: QuerySet) -> int:
    """The planner's row estimate for ``queryset`` (PostgreSQL's EXPLAIN, without running it)."""
    if connections[queryset.db].vendor != "postgresql":
        return -1
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


class WorkflowFilter(admin.SimpleListFilter):
    """Workflows from config.yaml: no ``SELECT DISTINCT`` over the whole case table."""

    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in get_config().workflows]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(workflow=value) if value else queryset


class TreatmentMachineFilter(admin.SimpleListFilter):
    """The treatment machine the plan is for (read off an index, not the whole table)."""

    title = "treatment machine"
    parameter_name = "machine"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        machines = (
            Case.objects.exclude(treatment_machine="")
            .order_by("treatment_machine")
            .values_list("treatment_machine", flat=True)
            .distinct()
        )
        return [(machine, machine) for machine in machines[:50]]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(treatment_machine=value) if value else queryset


class GPUHostFilter(admin.SimpleListFilter):
    """The GPU server a case runs (or ran) on; hosts come from the small GPU table."""

    title = "GPU server"
    parameter_name = "host"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        hosts = GPUResource.objects.order_by("host").values_list("host", flat=True).distinct()
        return [(host, host) for host in hosts]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(host=value) if value else queryset


# Active cases first (NEW, waiting, running), then the newest.


# --- the case admin -------------------------------------------------------------------


@admin.register(Case)
class CaseAdmin(OperatorActionsAdmin):
    operator_actions = CASE_ACTIONS
    actions = list_actions(CASE_ACTIONS)
    change_form_template = "cases/admin/case_change_form.html"
    list_display = (
        "case_id",
        "patient",
        "plan",
        "status_badge",
        "dose_thumbnail",
        "progress_bar",
        "gpu",
        "priority",
        "age",
        "duration",
    )
    list_display_links = ("case_id",)
    list_filter = (
        "status",
        "qa_verdict",
        WorkflowFilter,
        TreatmentMachineFilter,
        GPUHostFilter,
        "created_at",
    )
    search_fields = ("case_id", "patient_id", "patient_name", "plan_label")
    search_help_text = "Search by case id, patient ID, patient name or plan label (any part)."
    ordering = (ACTIVE_FIRST.asc(), "-created_at")
    list_select_related = ("current_run",)
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice: too dear on big tables
    paginator = EstimatedCountPaginator
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "case_id",
                    "status_badge",
                    "qa_badge",
                    "progress_bar",
                    "workflow",
                    "priority",
                    "host",
                    "gpu",
                )
            },
        ),
        (
            "Patient and plan",
            {
                "fields": (
                    "patient_id",
                    "patient_name",
                    "plan_label",
                    "plan_date",
                    "treatment_machine",
                    "beam_list",
                    "log_check_said",
                )
            },
        ),
        ("Failure", {"fields": ("error_kind", "error_message")}),
        ("Paths", {"fields": ("source_path", "remote_case_dir", "remote_output_dir", "results")}),
        (
            "Times",
            {
                "fields": (
                    "created_at",
                    "first_dispatched_at",
                    "finished_at",
                    "waited",
                    "duration",
                    "updated_at",
                )
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # the result files of each case's current run: one more query for the whole page
        return (
            super().get_queryset(request).with_gpus().prefetch_related("current_run__result_files")
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        own = [
            path(
                "<path:object_id>/results/<int:file_pk>/download/",
                view(self.result_download_view),
                name="cases_case_result_download",
            ),
            path(
                "<path:object_id>/results/<int:file_pk>/<slug:size>.png",
                view(self.dose_picture_view),
                name="cases_case_dose_picture",
            ),
            path(
                "<path:object_id>/qa/<int:criterion_pk>/gamma.png",
                view(self.gamma_picture_view),
                name="cases_case_gamma_picture",
            ),
        ]
        return own + super().get_urls()

    # -- results: downloads and pictures (staff with view permission only) -----------

    def result_download_view(self, request: HttpRequest, object_id: str, file_pk: int):
        case, result_file = self._result_file(request, object_id, file_pk)
        try:
            handle = results.open_confined(results.result_path(case, result_file))
        except results.ResultFileError as exc:
            raise Http404(str(exc)) from None
        name = result_file.path.rsplit("/", 1)[-1]
        return FileResponse(handle, as_attachment=True, filename=name)

    def dose_picture_view(self, request: HttpRequest, object_id: str, file_pk: int, size: str):
        if size not in ("dose", "thumbnail"):
            raise Http404(f"no picture {size!r}")
        case, result_file = self._result_file(request, object_id, file_pk)
        try:
            png = results.dose_png(case, result_file, thumbnail=size == "thumbnail")
        except (results.ResultFileError, DoseFileError) as exc:
            raise Http404(str(exc)) from None
        return HttpResponse(png, content_type="image/png")

    def gamma_picture_view(self, request: HttpRequest, object_id: str, criterion_pk: int):
        case = self._viewable_case(request, object_id)
        criterion = QACriterion.objects.filter(pk=criterion_pk, result__run__case=case).first()
        if criterion is None or not criterion.gamma_png:
            raise Http404(f"no gamma map {criterion_pk} for case {case.case_id}")
        return HttpResponse(bytes(criterion.gamma_png), content_type="image/png")

    def _viewable_case(self, request: HttpRequest, object_id: str) -> Case:
        case = self.get_object(request, unquote(object_id))
        if case is None:
            raise Http404(f"no case with id {object_id!r}")
        if not self.has_view_permission(request, case):
            raise PermissionDenied
        return case

    def _result_file(
        self, request: HttpRequest, object_id: str, file_pk: int
    ) -> tuple[Case, ResultFile]:
        case = self._viewable_case(request, object_id)
        found = ResultFile.objects.select_related("run").filter(pk=file_pk, run__case=case)
        result_file = found.first()
        if result_file is None:
            raise Http404(f"no result file {file_pk} for case {case.case_id}")
        return case, result_file

    def get_fieldsets(self, request: HttpRequest, obj: Case | None = None):
        """Only what says something about this case: no Failure section without a failure,
        no remote folders before the case was uploaded anywhere."""
        if obj is None:
            return self.fieldsets
        hidden = set()
        if not obj.error_kind and not obj.error_message:
            hidden |= {"error_kind", "error_message"}
        if obj.current_run is None or obj.current_run.uploaded_at is None:
            hidden |= {"remote_case_dir", "remote_output_dir"}
        shown = []
        for name, options in self.fieldsets:
            fields = tuple(f for f in options["fields"] if f not in hidden)
            if fields:
                shown.append((name, {**options, "fields": fields}))
        return shown

    def has_delete_permission(self, request: HttpRequest, obj: Case | None = None) -> bool:
        # Never: a deleted case whose folder is still in the watched directory is found
        # again by the scanner and run as a new case.
        return False

    def detail_context(self, case: Case) -> dict[str, Any]:
        runs = WorkflowStep.objects.filter(case=case).select_related("gpu", "run").order_by("id")
        events = CaseEvent.objects.filter(case=case).select_related("step_run").order_by("id")
        timeline = [{"run": run, "duration": format_duration(run.duration)} for run in runs]
        return {
            # an active case's page updates itself (cases/static/cases/mqi-live.js)
            "live_refresh_seconds": 0 if case.is_terminal else LIVE_REFRESH_SECONDS,
            "timeline": timeline,
            "case_events": events,
            "case_runs": provenance.case_runs(case),
            "folder": provenance.folder_state(case),
            "doses": results.dose_views(case, case.current_run),
            "qa": case.qa_result,
        }

    # -- columns ---------------------------------------------------------------------

    @admin.display(description="Status", ordering="status")
    def status_badge(self, case: Case) -> SafeString:
        """The status, and under it for a completed case its QA verdict: one column, so
        that the list fits beside its filters at 1280 px."""
        status = status_badge(case.status, case.get_status_display())
        if case.status != Case.Status.COMPLETED:
            return status
        return format_html('{}<span class="mqi-qa-line">{}</span>', status, qa_badge(case))

    @admin.display(description="QA", ordering="qa_verdict")
    def qa_badge(self, case: Case) -> SafeString | str:
        return qa_badge(case)

    @admin.display(description="Dose")
    def dose_thumbnail(self, case: Case) -> SafeString | str:
        """The axial slice of the current run's dose, drawn when the browser asks for it."""
        run = case.current_run
        dose = next(
            (f for f in (run.result_files.all() if run else ()) if f.path.lower().endswith(".dcm")),
            None,
        )
        if dose is None:
            return "—"
        url = reverse("admin:cases_case_dose_picture", args=[case.pk, dose.pk, "thumbnail"])
        return format_html(
            '<img class="mqi-dose-thumbnail" src="{}" alt="" loading="lazy" width="{}" '
            'height="{}">',
            url,
            80,
            30,
        )

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, case: Case) -> SafeString:
        return progress_bar(case.progress, case.status, case.progress_caption)

    @admin.display(description="GPU")
    def gpu(self, case: Case) -> SafeString | str:
        return gpu_links(case.gpus)

    @admin.display(description="Age", ordering="-created_at")
    def age(self, case: Case) -> str:
        return format_duration(timezone.now() - case.created_at, coarse=True)

    @admin.display(description="Duration")
    def duration(self, case: Case) -> str:
        """From the first dispatch to the end: the time it ran, not the time it waited."""
        return format_duration(case.run_time)

    @admin.display(description="Waited")
    def waited(self, case: Case) -> str:
        """From being found to its first step's dispatch (for a GPU, a server)."""
        return format_duration(case.waited)

    @admin.display(description="Patient", ordering="patient_id")
    def patient(self, case: Case) -> SafeString | str:
        if not case.patient_id:
            return "—"
        return format_html(
            '{}<br><span class="mqi-muted">{}</span>', case.patient_id, case.patient_name
        )

    @admin.display(description="Plan", ordering="plan_label")
    def plan(self, case: Case) -> SafeString | str:
        if not case.plan_label and not case.beam_count:
            return "—"
        beams = f"{case.beam_count} beam{'s' if case.beam_count != 1 else ''}"
        machine = f", {case.treatment_machine}" if case.treatment_machine else ""
        return format_html(
            '{}<br><span class="mqi-muted">{}{}</span>', case.plan_label, beams, machine
        )

    @admin.display(description="Treatment beams")
    def beam_list(self, case: Case) -> str:
        return ", ".join(f"{beam['number']} {beam['name']}".strip() for beam in case.beams) or "—"

    @admin.display(description="Logs matched to the plan")
    def log_check_said(self, case: Case) -> str:
        return provenance.log_check_said(case.log_check)

    @admin.display(description="Remote case directory")
    def remote_case_dir(self, case: Case) -> str:
        paths = provenance.run_paths(case)
        return paths.case_dir if paths else "— (not uploaded yet)"

    @admin.display(description="Remote output directory")
    def remote_output_dir(self, case: Case) -> str:
        paths = provenance.run_paths(case)
        return paths.output_dir if paths else "—"

    @admin.display(description="Results folder")
    def results(self, case: Case) -> str:
        paths = provenance.run_paths(case)
        return str(paths.results_dir) if paths else "—"
