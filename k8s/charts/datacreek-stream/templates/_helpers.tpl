{{- define "stream.labels" -}}
app.kubernetes.io/name: datacreek-stream
app.kubernetes.io/part-of: datacreek
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
