# The admin's own time fields (created, finished, ...) in the format of mqi_site.times:
# "2026-11-29 19:44:36 CET", in the site's time zone with its label.
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
