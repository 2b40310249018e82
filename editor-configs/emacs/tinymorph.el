;;; tinymorph.el --- tinymorph language server through eglot  -*- lexical-binding: t; -*-

;; Feature annotations (hover, and inlay hints where eglot has them: 1.10 and later), steering code actions and
;; steered completions from the tinymorph language server, for `markdown-mode' and `text-mode'.
;;
;; Setup:
;;   (add-to-list 'load-path "/path/to/tinymorph/editor-configs/emacs")
;;   (require 'tinymorph)
;;   (setq tinymorph-command '("/path/to/tinymorph/.venv/bin/tinymorph" "serve"))
;;   (add-hook 'markdown-mode-hook #'eglot-ensure)   ; and/or text-mode-hook
;;
;; Keys (in buffers managed by the tinymorph server), under C-c t:
;;   a  code actions (accept suggestion, amplify / suppress features, rewrite selection, clear steering)
;;   s  steer toward a feature       x  switch a feature off     c  clear steering
;;   l  list steering                f  search features          i  status
;;   m  write more like the region (a style preset; C-u to name it)
;;   p  list presets    o  switch a preset on / off    r  rename a preset    k  remove a preset
;;   w  watch a feature (flymake flags the sentences where it is strong)    u  stop watching    W  list watched
;;   e  the features most specific to the region      g  feature map of the buffer (in the browser)

;;; Code:

(require 'eglot)
(require 'jsonrpc)
(require 'cl-lib)

(defgroup tinymorph nil
  "See and steer the features a language model reads in your prose."
  :group 'tools)

(defcustom tinymorph-command '("tinymorph" "serve")
  "Command that starts the tinymorph language server on stdio."
  :type '(repeat string))

(defcustom tinymorph-initialization-options '(:model "default" :sae "default")
  "Settings sent at start-up (the camelCase keys of the README's configuration table)."
  :type 'plist)

(defcustom tinymorph-steer-strength 1
  "Default strength for `tinymorph-steer'."
  :type 'number)

(defclass tinymorph-server (eglot-lsp-server) ()
  :documentation "The tinymorph language server.")

(cl-defmethod eglot-initialization-options ((_server tinymorph-server))
  tinymorph-initialization-options)

(defun tinymorph--contact (&optional _interactive)
  "The server contact, or one clear error when the command is missing (eglot does not retry)."
  (let ((program (car tinymorph-command)))
    (unless (or (file-executable-p program) (executable-find program))
      (user-error "tinymorph: cannot start the server: %S is not an executable. Run `make demo' in the \
tinymorph checkout and set `tinymorph-command' to (\"<checkout>/.venv/bin/tinymorph\" \"serve\")" program))
    (cons 'tinymorph-server tinymorph-command)))

(add-to-list 'eglot-server-programs
             '(((markdown-mode :language-id "markdown") (gfm-mode :language-id "markdown")
                (text-mode :language-id "plaintext"))
               . tinymorph--contact))

(defun tinymorph--server ()
  (let ((server (eglot-current-server)))
    (unless (and server (cl-typep server 'tinymorph-server))
      (user-error "tinymorph: this buffer is not managed by the tinymorph server (M-x eglot)"))
    server))

(defun tinymorph-command (command &optional argument)
  "Run the server COMMAND (a tinymorph.* name) with ARGUMENT (a plist) and return its result."
  (when (and (eglot-managed-p) (fboundp 'eglot--signal-textDocument/didChange))
    (eglot--signal-textDocument/didChange))  ; the server must see the text as the buffer has it
  (jsonrpc-request (tinymorph--server) :workspace/executeCommand
                   `(:command ,command :arguments ,(vector (or argument (make-hash-table))))))

(defun tinymorph--describe (result)
  (let ((entries (append (plist-get result :steering) nil)))
    (if (null entries)
        "no steering"
      (mapconcat (lambda (e)
                   (format "%s %s (%s)" (plist-get e :feature)
                           (pcase (plist-get e :mode)
                             ("ablate" "off")
                             ("clamp" (format "= %s" (plist-get e :value)))
                             (_ (format "%+g" (plist-get e :strength))))
                           (plist-get e :label)))
                 entries ", "))))

(defun tinymorph-steer (feature strength)
  "Steer suggestions toward FEATURE with STRENGTH."
  (interactive (list (read-number "Feature: ") (read-number "Strength: " tinymorph-steer-strength)))
  (message "tinymorph steering: %s"
           (tinymorph--describe (tinymorph-command "tinymorph.steer.add"
                                                   `(:feature ,feature :strength ,strength :mode "add")))))

(defun tinymorph-suppress (feature)
  "Steer suggestions away from FEATURE, as the Suppress code action does."
  (interactive (list (read-number "Feature: ")))
  (message "tinymorph steering: %s"
           (tinymorph--describe (tinymorph-command "tinymorph.steer.add" `(:feature ,feature :mode "suppress")))))

(defun tinymorph-off (feature)
  "Switch FEATURE off in suggestions."
  (interactive (list (read-number "Feature: ")))
  (message "tinymorph steering: %s"
           (tinymorph--describe (tinymorph-command "tinymorph.steer.add" `(:feature ,feature :mode "ablate")))))

(defun tinymorph-clear ()
  "Clear the workspace's steering."
  (interactive)
  (tinymorph-command "tinymorph.steer.clear")
  (message "tinymorph: steering cleared"))

(defun tinymorph-list ()
  "Show the workspace's steering."
  (interactive)
  (message "tinymorph steering: %s" (tinymorph--describe (tinymorph-command "tinymorph.steer.list"))))

(defun tinymorph-search (query)
  "Search features whose labels or contexts match QUERY, then steer toward the one chosen."
  (interactive (list (read-string "Search features: ")))
  (let* ((found (append (plist-get (tinymorph-command "tinymorph.features.search" `(:query ,query)) :features)
                        nil))
         (choices (mapcar (lambda (f) (cons (format "%s  %s" (plist-get f :feature) (plist-get f :label))
                                            (plist-get f :feature)))
                          found)))
    (if (null choices)
        (message "tinymorph: no feature matches %s" query)
      (tinymorph-steer (cdr (assoc (completing-read "Steer toward: " choices nil t) choices))
                       tinymorph-steer-strength))))

(defun tinymorph--describe-presets (result)
  (let ((presets (append (plist-get result :presets) nil)))
    (if (null presets)
        "no presets"
      (mapconcat (lambda (p) (format "%s %s (%+g)%s" (if (eq (plist-get p :enabled) t) "[on]" "[off]")
                                     (plist-get p :name) (plist-get p :strength)
                                     (if (plist-get p :error) (format " ! %s" (plist-get p :error)) "")))
                 presets "; "))))

(defun tinymorph-more-like-this (beg end &optional name)
  "Make a style preset from the region BEG..END: suggestions lean toward it.
With a prefix argument, ask for its NAME (else its first words name it)."
  (interactive (list (region-beginning) (region-end)
                     (when current-prefix-arg (read-string "Preset name: "))))
  (let* ((doc (eglot--VersionedTextDocumentIdentifier))
         (result (tinymorph-command
                  "tinymorph.preset.create"
                  `(:uri ,(plist-get doc :uri) :version ,(plist-get doc :version)
                    :range (:start ,(eglot--pos-to-lsp-position beg) :end ,(eglot--pos-to-lsp-position end))
                    ,@(when (and name (not (string-empty-p name))) `(:name ,name)))))
         (preset (plist-get result :preset)))
    (message "tinymorph: suggestions now lean toward \"%s\" (against the %s)" (plist-get preset :name)
             (if (equal (plist-get result :against) "neutral") "neutral reference" "rest of the document"))
    result))

(defun tinymorph--preset-names ()
  (mapcar (lambda (p) (plist-get p :name))
          (append (plist-get (tinymorph-command "tinymorph.preset.list") :presets) nil)))

(defun tinymorph--read-preset (prompt)
  (let ((names (tinymorph--preset-names)))
    (unless names
      (user-error "tinymorph: no presets yet: select a passage and run `tinymorph-more-like-this'"))
    (completing-read prompt names nil t)))

(defun tinymorph-presets ()
  "Show the workspace's style presets."
  (interactive)
  (message "tinymorph presets: %s" (tinymorph--describe-presets (tinymorph-command "tinymorph.preset.list"))))

(defun tinymorph-preset-toggle (name &optional enabled)
  "Switch the preset NAME on or off (ENABLED: `on' or `off'; nil flips it)."
  (interactive (list (tinymorph--read-preset "Switch preset: ")))
  (message "tinymorph presets: %s"
           (tinymorph--describe-presets
            (tinymorph-command "tinymorph.preset.toggle"
                               `(:name ,name ,@(pcase enabled ('on '(:enabled t)) ('off '(:enabled :json-false))))))))

(defun tinymorph-preset-rename (name to)
  "Rename the preset NAME to TO."
  (interactive (let ((name (tinymorph--read-preset "Rename preset: ")))
                 (list name (read-string (format "Rename %s to: " name) nil nil name))))
  (message "tinymorph presets: %s"
           (tinymorph--describe-presets (tinymorph-command "tinymorph.preset.rename" `(:name ,name :to ,to)))))

(defun tinymorph-preset-remove (name)
  "Remove the preset NAME."
  (interactive (list (tinymorph--read-preset "Remove preset: ")))
  (message "tinymorph presets: %s"
           (tinymorph--describe-presets (tinymorph-command "tinymorph.preset.remove" `(:name ,name)))))

(defun tinymorph--describe-watches (result)
  (let ((watches (append (plist-get result :watch) nil)))
    (if (null watches)
        "nothing watched"
      (mapconcat (lambda (w) (format "%s (%s) above %g" (plist-get w :feature) (plist-get w :label)
                                     (plist-get w :threshold)))
                 watches ", "))))

(defun tinymorph-watch (feature &optional threshold severity message)
  "Flag every sentence where FEATURE is strong (flymake shows it).
THRESHOLD is the activation it must reach (nil: half its strongest in the corpus); SEVERITY is \"error\",
\"warning\", \"information\" or \"hint\"; MESSAGE is said with each flag."
  (interactive (list (read-number "Watch feature: ")
                     (let ((v (read-string "Threshold (empty: half its strongest): ")))
                       (unless (string-empty-p v) (string-to-number v)))))
  (let ((result (tinymorph-command "tinymorph.watch.add"
                                   `(:feature ,feature ,@(when threshold `(:threshold ,threshold))
                                     ,@(when severity `(:severity ,severity)) ,@(when message `(:message ,message))
                                     :uri ,(eglot--path-to-uri (buffer-file-name))))))
    (message "tinymorph watching: %s" (tinymorph--describe-watches result))
    result))

(defun tinymorph-unwatch (feature)
  "Stop watching FEATURE."
  (interactive (list (let* ((watches (append (plist-get (tinymorph-command "tinymorph.watch.list") :watch) nil))
                            (choices (mapcar (lambda (w) (cons (format "%s  %s" (plist-get w :feature)
                                                                       (plist-get w :label))
                                                               (plist-get w :feature)))
                                             watches)))
                       (unless choices (user-error "tinymorph: nothing is watched"))
                       (cdr (assoc (completing-read "Stop watching: " choices nil t) choices)))))
  (message "tinymorph watching: %s"
           (tinymorph--describe-watches (tinymorph-command "tinymorph.watch.remove" `(:feature ,feature)))))

(defun tinymorph-watches ()
  "Show the watched features."
  (interactive)
  (message "tinymorph watching: %s" (tinymorph--describe-watches (tinymorph-command "tinymorph.watch.list"))))

(defun tinymorph-features-by-example (beg end &optional choose)
  "The features most specific to the region BEG..END; pick one, then steer toward it, suppress it or watch it.
CHOOSE, when given, picks instead of `completing-read': it gets the prompt and the choices' names."
  (interactive (list (region-beginning) (region-end)))
  (let* ((choose (or choose (lambda (prompt names) (completing-read prompt names nil t))))
         (doc (eglot--VersionedTextDocumentIdentifier))
         (found (append (plist-get (tinymorph-command
                                    "tinymorph.features.byExample"
                                    `(:uri ,(plist-get doc :uri) :version ,(plist-get doc :version)
                                      :range (:start ,(eglot--pos-to-lsp-position beg)
                                              :end ,(eglot--pos-to-lsp-position end))))
                                   :features)
                        nil)))
    (if (null found)
        (message "tinymorph: no feature a word names is specific to this text")
      (let* ((names (mapcar (lambda (f) (cons (plist-get f :label) f)) found))
             (feature (cdr (assoc (funcall choose "Most specific to the region: " (mapcar #'car names)) names)))
             (actions (mapcar (lambda (a) (cons (plist-get a :title) a)) (append (plist-get feature :actions) nil)))
             (action (cdr (assoc (funcall choose (format "%s: " (plist-get feature :label)) (mapcar #'car actions))
                                 actions))))
        (message "tinymorph: %s" (plist-get action :title))
        (tinymorph-command (plist-get action :command) (aref (plist-get action :arguments) 0))))))

(defcustom tinymorph-map-open-function #'browse-url-of-file
  "Function that opens the feature map (an HTML file); it gets the file's path."
  :type 'function)

(defun tinymorph-map ()
  "Write the feature map of this buffer (a page that colours the text by any feature you click) and open it."
  (interactive)
  (let* ((result (tinymorph-command "tinymorph.map" `(:uri ,(eglot--path-to-uri (buffer-file-name))
                                                     :open :json-false)))
         (path (plist-get result :path)))
    (funcall tinymorph-map-open-function path)
    (message "tinymorph: feature map %s" path)
    path))

(defun tinymorph-status ()
  "Show the server's model, SAE, device and queue."
  (interactive)
  (let* ((status (tinymorph-command "tinymorph.status"))
         (engine (plist-get status :engine)))
    (message "tinymorph: %s · model %s · SAE %s · %s · queue %s" (plist-get status :state)
             (plist-get engine :model) (plist-get engine :sae) (plist-get engine :device)
             (plist-get status :queueDepth))))

(defvar tinymorph-command-map
  (let ((map (make-sparse-keymap)))
    (define-key map "a" #'eglot-code-actions)
    (define-key map "s" #'tinymorph-steer)
    (define-key map "x" #'tinymorph-suppress)
    (define-key map "c" #'tinymorph-clear)
    (define-key map "l" #'tinymorph-list)
    (define-key map "f" #'tinymorph-search)
    (define-key map "i" #'tinymorph-status)
    (define-key map "m" #'tinymorph-more-like-this)
    (define-key map "p" #'tinymorph-presets)
    (define-key map "o" #'tinymorph-preset-toggle)
    (define-key map "r" #'tinymorph-preset-rename)
    (define-key map "k" #'tinymorph-preset-remove)
    (define-key map "w" #'tinymorph-watch)
    (define-key map "u" #'tinymorph-unwatch)
    (define-key map "W" #'tinymorph-watches)
    (define-key map "e" #'tinymorph-features-by-example)
    (define-key map "g" #'tinymorph-map)
    map)
  "Keys for tinymorph, under `C-c t' in managed buffers.")

(define-minor-mode tinymorph-mode
  "Keys for the tinymorph server in buffers it manages."
  :keymap (let ((map (make-sparse-keymap))) (define-key map (kbd "C-c t") tinymorph-command-map) map))

(defun tinymorph--managed ()
  (let ((server (eglot-current-server)))
    (when (and server (cl-typep server 'tinymorph-server))
      (tinymorph-mode (if (eglot-managed-p) 1 -1))
      (when (and (fboundp 'eglot-inlay-hints-mode) (eglot-managed-p))
        (eglot-inlay-hints-mode 1)))))

(add-hook 'eglot-managed-mode-hook #'tinymorph--managed)

(provide 'tinymorph)
;;; tinymorph.el ends here
