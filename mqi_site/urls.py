from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from mqi_site import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/overview/", include("mqi_site.admin_views")),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
