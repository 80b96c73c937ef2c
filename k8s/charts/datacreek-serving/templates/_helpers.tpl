{{- define "serving.labels" -}}
app.kubernetes.io/part-of: datacreek
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Ray's containers: the same image, token auth, object-store credentials and model cache on the head and the workers */}}
{{- define "serving.rayContainer" -}}
image: {{ .Values.image }}
env:
  - {name: RAY_AUTH_MODE, value: token}
  - {name: RAY_AUTH_TOKEN_PATH, value: /etc/ray-auth/token}
  - {name: RAY_USAGE_STATS_ENABLED, value: "0"}
  - {name: OMP_NUM_THREADS, value: "1"}
envFrom:
  - secretRef:
      name: {{ .Values.modelStoreSecret }}
  - secretRef:
      name: {{ .Values.storeSecret }}
volumeMounts:
  - {name: ray-auth, mountPath: /etc/ray-auth, readOnly: true}
  - {name: model-cache, mountPath: {{ .Values.modelCache.mountPath }}}
{{- end -}}

{{- define "serving.rayVolumes" -}}
- name: ray-auth
  secret:
    secretName: {{ .Values.authTokenSecret }}
- name: model-cache
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end -}}
