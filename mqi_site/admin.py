"""The admin site as a whole: only pages that lead somewhere useful.

django_dramatiq registers its Task model, which stays empty here (no task is recorded
in the database); "View site" would only lead back to the admin.
"""

from django.contrib import admin
from django_dramatiq.models import Task

admin.site.unregister(Task)
admin.site.site_url = None
# The home page lists the few models; a sidebar repeating them on every page took the
# width the case and GPU lists need at 1280 px.
admin.site.enable_nav_sidebar = False
