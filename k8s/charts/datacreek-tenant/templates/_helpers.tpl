{{- define "tenant.id" -}}
{{- $id := required "tenant.id is required" .Values.tenant.id -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$" $id) -}}
{{- fail (printf "tenant.id %q is not a lowercase DNS label of at most 40 characters" $id) -}}
{{- end -}}
{{- $id -}}
{{- end -}}
{{- define "tenant.namespace" -}}tenant-{{ include "tenant.id" . }}{{- end -}}
{{- define "tenant.labels" -}}
app.kubernetes.io/part-of: datacreek
app.kubernetes.io/managed-by: {{ .Release.Service }}
datacreek/tenant: {{ include "tenant.id" . }}
{{- end -}}
